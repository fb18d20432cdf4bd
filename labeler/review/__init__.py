"""``labeler review``: choosing the images a person should check, writing them for Label Studio and CVAT, and merging the corrections back."""
