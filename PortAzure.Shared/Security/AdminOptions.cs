namespace PortAzure.Security;

/// <summary>Operator API access (<c>Admin:*</c>). With no key the operator API is closed.</summary>
public sealed class AdminOptions
{
    public const string SectionName = "Admin";

    public string? ApiKey { get; set; }
}
