"""edgecompress: a trained model in, a verified and benchmarked int8 edge engine out."""

__version__ = "0.1.0"
