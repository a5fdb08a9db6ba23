"""Character training: give a language model a persona from a constitution, and show that it worked."""

__version__ = "0.1.0"
