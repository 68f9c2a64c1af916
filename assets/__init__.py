"""The README's figures (PNG files beside this module) and the script that makes them: ``make_figures``."""
