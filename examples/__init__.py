"""Example applications built on tidings; the bank is the reference domain of the demo and the guides."""
