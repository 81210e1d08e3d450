"""The story tray: per viewer, the followed authors with live stories, unseen first, then by engagement."""
