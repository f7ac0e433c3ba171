"""One module per DVC stage, named like the stage: preflight, demo_data, prepare, review, train,
evaluate. Each has `run(params)`, called by folderfit.cli.stage_main. Nothing in the library
imports these modules, and they do not import each other: what two stages share lives below
them.
"""
