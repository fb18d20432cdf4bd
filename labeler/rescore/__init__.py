"""``labeler rescore``: a finished run's kept proposals labelled again with another bank, without the models."""
