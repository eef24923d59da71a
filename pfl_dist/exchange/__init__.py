"""What goes over the wire in a training round: the Exchange and its codecs (see exchange.py)."""
