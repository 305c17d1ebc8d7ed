#!/bin/sh
# The "tool" the default attacker fetches with wget from the host: `hvtrace run` serves this
# directory on the host's loopback, and the guest reaches it only as http://10.0.2.100/.
echo "tool: running as $(id -un) on $(hostname), kernel $(uname -r)"
