"""mpota host tools: keys, images, signing, feeds, flashing, deployment and the rollout server."""

__version__ = "0.1.0"
