"""The one exception type that entry points turn into a clean message instead of a traceback."""


class SelfAlignError(Exception):
    """A problem with the user's input (recipe, model folder, dataset, Hub settings), stated plainly."""
