"""``labeler run`` top to bottom: its configuration, the driver, the Ray Data pipeline, the watchdog, the cluster fit and the progress display."""
