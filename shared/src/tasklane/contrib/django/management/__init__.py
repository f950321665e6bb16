"""Django management commands of Tasklane."""
