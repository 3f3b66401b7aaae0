"""imgrec-gan's entry point: `imgrec-gan [overrides]` trains (commands.gan), `imgrec-gan sample ...` draws an
image folder (commands.gan), `imgrec-gan study ...` runs the small-data study (commands.gan_study)."""

import sys


def main():
    arguments = sys.argv[1:]
    if arguments and arguments[0] in ("sample", "study"):
        del sys.argv[1]  # Hydra reads the overrides from sys.argv
        if arguments[0] == "sample":
            from imgrec.commands.gan import sample_main

            return sample_main()
        from imgrec.commands.gan_study import study_main

        return study_main()
    from imgrec.commands.gan import train_main

    return train_main()


if __name__ == "__main__":
    main()
