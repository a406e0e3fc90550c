"""The executions table, the system of record of every execution.

The workflow service creates and reads rows; the execution service moves them through their states. Both use this
one repository, so a state transition has exactly one definition (conditional updates that never leave a terminal
state), whichever process makes it.
"""
