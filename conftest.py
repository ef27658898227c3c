"""pytest settings for the notebooks (nbval); the unit tests' fixtures are in tests/.

nbval compares the printed output of cells tagged ``nbval-check-output``. Text on
stderr (tqdm progress bars, library warnings) differs from machine to machine and run
to run, so it is never compared.
"""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
