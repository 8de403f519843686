"""The run machinery: a grid of cells (runner), one method on one prompt (one_cell), the DMS child process (isolated)."""
