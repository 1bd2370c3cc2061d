"""`tunelab ui`: a web board over run directories (runs, live training, comparison, launch, chat, export).

The board is a view over the files other commands write (see `tunelab.rundir`); it keeps no state of
its own but the records of the jobs it launched (`$TUNELAB_HOME/ui/jobs/`), so a reload or a restart
shows the same thing. Modules: `roots` (which paths may be read), `liveness` (is a process working on
a run?), `jobs` (launching, stopping), `scan` (runs, experiments, sweeps and their status), `views`
(a run's page, comparisons through `experiment.report`), `launch` (the config form and its checks),
`chat` (models through `serve.chat.ChatSession`), `app` (the HTTP routes), `command` (`tunelab ui`).
"""
