"""One kernel's container: launch, channels, readiness, the tmpfs quota, and ownership of what envpin started."""
