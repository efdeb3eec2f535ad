using Microsoft.Extensions.Options;

namespace PortAzure.Security;

/// <summary>Operator API access (<c>Admin:*</c>). With no key the operator API is closed.</summary>
public sealed class AdminOptions
{
    public const string SectionName = "Admin";

    /// <summary>Shortest key accepted: the key can be tried online without limit, and it opens the replay of dead letters.</summary>
    public const int MinApiKeyLength = 16;

    public string? ApiKey { get; set; }
}

/// <summary>A key, when set, long enough not to be guessed.</summary>
public sealed class AdminOptionsValidator : IValidateOptions<AdminOptions>
{
    public ValidateOptionsResult Validate(string? name, AdminOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return string.IsNullOrEmpty(options.ApiKey) || options.ApiKey.Length >= AdminOptions.MinApiKeyLength
            ? ValidateOptionsResult.Success
            : ValidateOptionsResult.Fail(
                $"Admin:ApiKey must be at least {AdminOptions.MinApiKeyLength} characters (a long random value: it opens the replay of dead letters, which starts pipeline runs).");
    }
}
