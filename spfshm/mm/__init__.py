"""The mm model: one file per kernel concept, named after it."""
