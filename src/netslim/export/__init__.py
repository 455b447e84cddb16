"""Writing compressed models to disk and loading them back: :func:`netslim.export.save.save`
and :func:`netslim.export.load.load` (``netslim.save`` and ``netslim.load``).

Nothing is imported here, so a module that needs one part (``netslim.export.atomic``) does not
pull in the writers and what they import.
"""


def __getattr__(name: str):
    """``netslim.export.round_for_storage``, imported on first use."""
    if name == "round_for_storage":
        from netslim.export.save import round_for_storage  # noqa: PLC0415

        return round_for_storage
    raise AttributeError(f"module 'netslim.export' has no attribute {name!r}")
