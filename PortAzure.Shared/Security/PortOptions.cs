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
