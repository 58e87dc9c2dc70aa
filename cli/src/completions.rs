//! `trellis completions SHELL`: a completion script for bash, zsh, fish (or elvish,
//! powershell), generated from the command tree so it never drifts from the real flags.

use clap_complete::Shell;

/// Arguments of `trellis completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Example: `trellis completions bash > /etc/bash_completion.d/trellis`.
    shell: Shell,
}

/// Prints the script on stdout. `--output` does not apply: the script is the output.
pub fn run(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
