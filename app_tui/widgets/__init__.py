"""The app's own widgets: frame preview, filmstrip, schedule heat map, video file tree."""
