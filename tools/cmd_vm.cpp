// placeholder until cmd_vm lands
