"""Stage preflight: validate params.yaml (every key, type and range, unknown keys refused) and
check that data.source exists and holds no name DVC cannot track, before any other stage
runs; writes data/preflight.ok: the installed folderfit's version and code digest, which every
other stage depends on (an upgrade reruns them, a valid params edit does not)."""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("preflight", __doc__, "folderfit.preflight:run")
