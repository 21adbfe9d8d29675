"""Dataset readers and the toy-data generator.

Every reader returns the items table (one row per image) with at least the columns in
ITEM_COLUMNS; see docs/data.md for the contract.
"""

ITEM_COLUMNS = ("item_id", "split", "class_id", "class_name", "image", "captions", "attributes")
