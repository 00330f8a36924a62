"""xaudit: test explanation methods against planted bugs whose ground truth is known."""
__version__ = "0.1.0"
