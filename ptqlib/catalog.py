"""What ptqlib offers, by name: its models, observers and training recipes, and their defaults.

Plain data, without torch, so that the command line can list every choice in ``--help``
at once (importing torch takes seconds). The modules that implement each name build their
registries from these tuples (``ptqlib.models.MODELS``, ``ptqlib.observers.OBSERVERS``,
``ptqlib.training.RECIPES``), so a name exists here exactly when it is implemented there.
"""

from __future__ import annotations

# ptqlib.models: SimpleNet (notebook 01), SmallCNN (07), DepthwiseCNN (09).
MODEL_NAMES = ("simplenet", "cnn", "dwcnn")

# ptqlib.observers, in the order notebook 03 introduces them.
OBSERVER_NAMES = (
    "minmax",
    "moving_average_minmax",
    "per_channel_minmax",
    "histogram",
    "percentile",
    "entropy",
    "mse",
)
# Activations get one range per tensor: every observer but the per-channel one.
ACTIVATION_OBSERVERS = tuple(name for name in OBSERVER_NAMES if not name.startswith("per_channel"))

# ptqlib.training: passes over the training split and the seed of a fresh model.
DEFAULT_EPOCHS = 10
# SmallCNN learns faster per epoch and costs more per epoch than SimpleNet; DepthwiseCNN's
# "hot" recipe breaks it at 8 epochs (notebook 09).
DEFAULT_EPOCHS_BY_MODEL = {"simplenet": DEFAULT_EPOCHS, "cnn": 4, "dwcnn": 8}
DEFAULT_SEED = 0
DEFAULT_RECIPE = "default"
RECIPE_NAMES = {"simplenet": ("default",), "cnn": ("default",), "dwcnn": ("default", "hot")}
# DepthwiseCNN's "hot" recipe trains with the seed of notebook 09's story model by default
# (the one ptqlib.pretrained ships): the same command gives the story's model.
RECIPE_SEEDS = {("dwcnn", "hot"): 2}


def default_seed(model: str, recipe: str = DEFAULT_RECIPE) -> int:
    """The seed ``python -m ptqlib train`` uses for ``model`` and ``recipe`` unless given one."""
    return RECIPE_SEEDS.get((model, recipe), DEFAULT_SEED)


# python -m ptqlib pipeline and bench: the batch sizes timed by default.
BATCH_SIZES = (1, 64, 1024)
