"""optrepro: reproduce the AdaBelief / EAdam / Adam comparisons and separate belief from epsilon placement."""

__version__ = "0.1.0"
