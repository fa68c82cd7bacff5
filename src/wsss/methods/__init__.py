"""WSSS methods: one module per method, each declared in `wsss.registry` by its REGISTER
literal and imported on demand (`wsss.methods.base.build_method`)."""
