"""The flow detail: trace and deciding rule."""
