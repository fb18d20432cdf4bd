"""How good labels are: COCOeval against ground truth, matching detections to references, and ``labeler estimate``."""
