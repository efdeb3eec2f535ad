using System.Text;

namespace PortAzure.Security;

/// <summary>Port organisation credentials (<c>Port:*</c>).</summary>
public sealed class PortOptions
{
    public const string SectionName = "Port";
    public const string DefaultApiBaseUrl = "https://api.port.io";

    /// <summary>Verifies Port's signatures; the default secret for Azure signatures; authenticates to Port's API.</summary>
    public string? ClientSecret { get; set; }

    /// <summary>Still accepted on incoming calls while a rotation is under way.</summary>
    public string? PreviousClientSecret { get; set; }

    public string? ClientId { get; set; }

    public Uri ApiBaseUrl { get; set; } = new(DefaultApiBaseUrl);

    /// <summary>
    /// A dead letter's report ends the Port run with FAILURE. Off, it is a log line only, and the run stays open:
    /// for teams that replay dead letters and whose pipelines report their own status to the same run, which Port
    /// refuses once the run has ended.
    /// </summary>
    public bool TerminateRunOnDeadLetter { get; set; } = true;

    /// <summary>
    /// An error naming <paramref name="key"/> when a secret begins or ends with white space or holds a control character or
    /// an invisible formatting one; null otherwise (also when it is not set). A secret read from a file keeps its trailing
    /// newline (a file saved on Windows may start with a byte-order mark, a pasted one hold a zero-width space), and as an
    /// HMAC key it is then another secret: the service would start and refuse (or sign wrongly) every call.
    /// </summary>
    public static string? SecretShapeError(string key, string? secret) =>
        string.IsNullOrEmpty(secret) || (!char.IsWhiteSpace(secret[0]) && !char.IsWhiteSpace(secret[^1]) && !secret.EnumerateRunes().Any(IsControlOrInvisible))
            ? null
            : $"{key} begins or ends with white space or holds a control or invisible character (a trailing newline or a byte-order mark from a file?); set the secret alone.";

    // By code point: the tag characters (U+E0000 block) are formatting ones outside the 16-bit range.
    private static bool IsControlOrInvisible(Rune r) => Rune.IsControl(r) || Rune.GetUnicodeCategory(r) == System.Globalization.UnicodeCategory.Format;

    /// <summary>Every <see cref="SecretShapeError"/> of <see cref="ClientSecret"/> and <see cref="PreviousClientSecret"/>.</summary>
    public IEnumerable<string> SecretShapeErrors() =>
        new[] { SecretShapeError("Port:ClientSecret", ClientSecret), SecretShapeError("Port:PreviousClientSecret", PreviousClientSecret) }
            .OfType<string>();

    /// <summary>The secrets incoming signatures are checked against, current first.</summary>
    public IReadOnlyList<byte[]> VerificationSecrets()
    {
        var secrets = new List<byte[]>(2);
        if (!string.IsNullOrEmpty(ClientSecret))
        {
            secrets.Add(Encoding.UTF8.GetBytes(ClientSecret));
        }
        if (!string.IsNullOrEmpty(PreviousClientSecret))
        {
            secrets.Add(Encoding.UTF8.GetBytes(PreviousClientSecret));
        }
        return secrets;
    }
}
