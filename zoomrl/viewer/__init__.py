"""`zoomrl view`: logged trajectories in the browser, with their images, zoom boxes and turns."""
