"""Hand-designed image features (SIFT / ORB keypoints with a bag of visual words, HOG, LBP, colour
histograms) for imgrec-features, beside the pretrained-CNN features."""
