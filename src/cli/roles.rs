//! `keygate roles ...`.

use super::output::{print_json, print_table, read_input, write_export, Failure};
use crate::manage::{role_json, Manager, RoleInput};
use clap::Subcommand;
use serde_json::json;

/// `keygate roles` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create a role.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A declared permission, `module.*` or `*` (repeatable, at least one).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List roles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one role.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a role; every key using it is affected at once.
    Edit {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Replaces the role's permissions (repeatable).
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Only if the role is still at this version (as `roles show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a role no key uses.
    Delete {
        id: String,
        /// Only if the role is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Write every role as one JSON line.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Restore roles from JSON lines (`-` for stdin): created, or replaced by id.
    Import {
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn print_role(role: &crate::keys::model::Role, json: bool) {
    if json {
        print_json(role_json(role), json!({}));
    } else {
        println!(
            "id:          {}\nname:        {}\ndescription: {}\npermissions: {}\nversion:     {}",
            role.id,
            role.name,
            role.description,
            role.permissions.join(", "),
            role.version
        );
    }
}

/// Runs a `roles` subcommand.
pub async fn run(m: &Manager<'_>, command: RolesCommand) -> Result<(), Failure> {
    match command {
        RolesCommand::Export { file } => {
            let lines = m.export_roles().await.map_err(|e| Failure::manage(e, false))?;
            write_export(file.as_deref(), &crate::manage::json_lines(&lines))?;
        }
        RolesCommand::Import { file, json } => {
            let text = read_input(&file)?;
            let summary = m.import_roles(&text).await.map_err(|e| Failure::manage(e, json))?;
            super::keys::print_summary(summary, "role", json)?;
        }
        RolesCommand::Create { id, name, description, permissions, json } => {
            let input = RoleInput { id: Some(id), name, description, permissions: Some(permissions) };
            let role = m.create_role(input).await.map_err(|e| Failure::manage(e, json))?;
            print_role(&role, json);
        }
        RolesCommand::List { json } => {
            let roles = m.list_roles().await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(roles.iter().map(role_json).collect(), json!({ "total": roles.len() }));
            } else {
                let rows: Vec<Vec<String>> = roles
                    .iter()
                    .map(|r| vec![r.id.clone(), r.name.clone(), r.description.clone(), r.permissions.join(",")])
                    .collect();
                print_table(&["ID", "NAME", "DESCRIPTION", "PERMISSIONS"], &rows);
            }
        }
        RolesCommand::Show { id, json } => {
            let role = m.get_role(&id).await.map_err(|e| Failure::manage(e, json))?;
            print_role(&role, json);
        }
        RolesCommand::Edit { id, name, description, permissions, if_version, json } => {
            let input = RoleInput { id: None, name, description, permissions: (!permissions.is_empty()).then_some(permissions) };
            let role = m.edit_role(&id, input, if_version).await.map_err(|e| Failure::manage(e, json))?;
            print_role(&role, json);
        }
        RolesCommand::Delete { id, if_version, json } => {
            m.delete_role(&id, if_version).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(json!({ "id": id, "deleted": true }), json!({}));
            } else {
                println!("deleted role {id}");
            }
        }
    }
    Ok(())
}
