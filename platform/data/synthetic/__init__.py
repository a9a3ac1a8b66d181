"""The synthetic benchmark: COCO-format data in which zero-shot transfer is possible."""
