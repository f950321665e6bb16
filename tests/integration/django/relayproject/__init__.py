"""A small Django project that runs ``manage.py tasklane_relay`` as a process of its own."""
