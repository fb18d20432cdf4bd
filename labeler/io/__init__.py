"""Input and output: storage URIs, image decoding, COCO, RLE, Parquet."""
