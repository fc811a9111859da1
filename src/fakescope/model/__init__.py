"""The detector network and the runtime (device, precision, memory layout) it runs on."""
