// Validate FHIR resources against a CASUS package (R4 or R5, as its package.json's fhirVersions says) with
// HAPI FHIR's FhirInstanceValidator, which runs the HL7 validator's core (org.hl7.fhir.validation) on the
// package's StructureDefinitions, CodeSystems and ValueSets, with the core definitions from
// hapi-fhir-validation-resources-r4 / -r5 (no package server).
//
//   java -cp '<lib>/*' Check.java <unpacked package folder> FILE...
//
// Prints one line per message: file TAB severity TAB location TAB message ("exception" when the
// validator itself failed on the file).
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.FhirVersionEnum;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Check {
  public static void main(String[] args) throws Exception {
    // The validator core prints notes of its own (e.g. snapshots of core examples it cannot build) to stdout;
    // they go to stderr, so stdout holds only the message lines.
    PrintStream results = System.out;
    System.setOut(System.err);
    String manifest = Files.readString(Path.of(args[0], "package", "package.json"));
    Matcher release = Pattern.compile("\"fhirVersions\"\\s*:\\s*\\[\\s*\"([^\"]+)\"").matcher(manifest);
    if (!release.find()) {
      throw new IllegalArgumentException("no fhirVersions in " + args[0] + "/package/package.json");
    }
    FhirContext ctx = FhirContext.forCached(FhirVersionEnum.forVersionString(release.group(1)));
    PrePopulatedValidationSupport casus = new PrePopulatedValidationSupport(ctx);
    List<Path> files;
    try (var listing = Files.list(Path.of(args[0], "package"))) {
      files = listing.sorted().toList();
    }
    for (Path p : files) {
      String n = p.getFileName().toString();
      if (n.startsWith("StructureDefinition-") || n.startsWith("CodeSystem-") || n.startsWith("ValueSet-")) {
        casus.addResource(ctx.newJsonParser().parseResource(Files.readString(p)));
      }
    }
    ValidationSupportChain chain = new ValidationSupportChain(
        casus, new DefaultProfileValidationSupport(ctx), new CommonCodeSystemsTerminologyService(ctx),
        new InMemoryTerminologyServerValidationSupport(ctx), new SnapshotGeneratingValidationSupport(ctx));
    FhirValidator validator = ctx.newValidator().registerValidatorModule(new FhirInstanceValidator(chain));
    for (int i = 1; i < args.length; i++) {
      String name = Path.of(args[i]).getFileName().toString();
      try {
        // The raw JSON, not a parsed model: HAPI's parser would drop unknown elements before validation.
        for (SingleValidationMessage m : validator.validateWithResult(Files.readString(Path.of(args[i]))).getMessages()) {
          results.println(String.join("\t", name, m.getSeverity().getCode(), String.valueOf(m.getLocationString()),
              m.getMessage().replace('\t', ' ').replace('\n', ' ')));
        }
      } catch (RuntimeException e) {
        results.println(String.join("\t", name, "exception", "", String.valueOf(e).replace('\n', ' ')));
      }
    }
  }
}
