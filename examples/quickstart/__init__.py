"""The quickstart project: what `hogsend dev` runs by default."""
