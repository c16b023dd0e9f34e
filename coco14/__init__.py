"""MS COCO 2014: annotation conversion for the WSSS pipeline (see coco14/annotations.py)."""
