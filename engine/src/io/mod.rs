//! The glommio shell: the only code that touches files or executors.
