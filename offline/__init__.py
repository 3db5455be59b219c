"""What `pulumi up` does not run: the recording mock, the offline render and its ARM view, the render
comparison. It runs the program from outside, as the CLI does; the program (infra/) never imports it."""
