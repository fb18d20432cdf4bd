"""``labeler export``: training sets (COCO, YOLO segmentation, semantic maps) from a run's labels."""
