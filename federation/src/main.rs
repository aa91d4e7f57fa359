//! `isthmus-federation`: the Isthmus control plane.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "isthmus-federation", version, about = "Isthmus control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the isthmus.dev CRDs (YAML, from the Rust types) into a directory.
    Crdgen {
        /// Target directory.
        #[arg(long, default_value = "crds")]
        out: PathBuf,
        /// Only compare; exit 1 if the directory is out of date.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out, check } => {
            if check {
                isthmus_federation::crdgen::check(&out)?;
                println!("{} is up to date", out.display());
            } else {
                for path in isthmus_federation::crdgen::write(&out)? {
                    println!("wrote {}", path.display());
                }
            }
        }
    }
    Ok(())
}
