// Reads one FHIR JSON resource per line on stdin and answers one line of JSON per resource:
// {"valid": bool, "messages": [...]} from FHIR.js (the npm `fhir` package), which validates against the
// FHIR R4 base StructureDefinitions and value sets it ships. Used by tests/fhir_validation.py.
"use strict";
const readline = require("readline");
const { Fhir } = require("fhir");

const fhir = new Fhir();
const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  let answer;
  try {
    answer = fhir.validate(JSON.parse(line), { errorOnUnexpected: true });
  } catch (err) {
    answer = { valid: false, messages: [{ severity: "error", message: String(err) }] };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
