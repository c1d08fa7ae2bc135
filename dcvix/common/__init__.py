"""What both daemons share."""
