//! Health checks of real servers (issue 5). Work in progress.
