"""adans: hardware-aware compression of pretrained CNNs with AdaNS sampling."""

__version__ = "0.1.0"
